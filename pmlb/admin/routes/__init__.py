"""The admin API's routes, one module per resource, each with ``register(app, ctx)``.

:func:`pmlb.admin.app.create_app` calls them in a fixed order (the order of
the OpenAPI document's paths). They take what they need from the
:class:`pmlb.admin.context.Context`, raise :mod:`pmlb.admin.errors`, and never
import each other.
"""
