"""``pmlb serve --workers N``: N worker processes on shared listeners, under one parent.

- :mod:`pmlb.workers.sockets`: each listener bound once per worker (``SO_REUSEPORT``);
- :mod:`pmlb.workers.parent`: starts, supervises, restarts and stops the workers;
- :mod:`pmlb.workers.child`: a worker (a full pmlb on inherited sockets);
- :mod:`pmlb.workers.front`: the one admin address, merging the workers' admins.
"""
