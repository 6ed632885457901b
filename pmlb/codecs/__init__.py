"""Sans-IO codecs: how client byte streams are cut into messages and back."""

from pmlb.codecs.framing import (
    Decoder,
    Framer,
    Framing,
    FramingError,
    LengthPrefixDecoder,
    LineDecoder,
    MessageTooLarge,
    RawDecoder,
    frame,
    framer,
    make_decoder,
)

__all__ = [
    "Decoder",
    "Framer",
    "Framing",
    "FramingError",
    "LengthPrefixDecoder",
    "LineDecoder",
    "MessageTooLarge",
    "RawDecoder",
    "frame",
    "framer",
    "make_decoder",
]
