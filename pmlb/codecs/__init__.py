"""Sans-IO codecs: how client byte streams are cut into messages and back."""

from pmlb.codecs.framing import (
    Decoder,
    Framing,
    FramingError,
    LengthPrefixDecoder,
    LineDecoder,
    MessageTooLarge,
    RawDecoder,
    frame,
    make_decoder,
)

__all__ = [
    "Decoder",
    "Framing",
    "FramingError",
    "LengthPrefixDecoder",
    "LineDecoder",
    "MessageTooLarge",
    "RawDecoder",
    "frame",
    "make_decoder",
]
