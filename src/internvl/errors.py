"""Errors raised at the package's boundaries.

Every failure a user can cause (a bad checkpoint, a corrupt image, a prompt whose `<image>` count does not
match its images, a config with wrong values) raises a subclass of `InternVLError` whose message names the
problem and the numbers involved, so callers can catch one type and users read one clear line.
"""


class InternVLError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(InternVLError, ValueError):
    """A config value is missing, inconsistent or out of range."""


class UnknownPresetError(InternVLError, KeyError):
    """A preset name is not in the preset table."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class CheckpointError(InternVLError):
    """A checkpoint directory is unreadable, incomplete, or its tensors do not match the model."""


class ImageTokenMismatchError(InternVLError, ValueError):
    """The number of image placeholders in a prompt differs from the number of images or tiles given."""


class ImageLoadError(InternVLError, ValueError):
    """An image or video file is missing, unreadable or corrupt."""


class ContextTooLongError(InternVLError, ValueError):
    """A prompt (text plus image tokens) does not fit the model's context window."""


class TemplateError(InternVLError, KeyError):
    """A conversation template name is unknown or a conversation is malformed."""

    def __str__(self) -> str:
        return str(self.args[0])


class DataError(InternVLError, ValueError):
    """A training record or dataset description is malformed; the message starts with `file:line` (or the key)."""


class ImageSizeError(InternVLError, ValueError):
    """Image tiles (pixel_values) whose shape is not the model's (N, 3, tile, tile)."""


class GenerationError(InternVLError, RuntimeError):
    """A request failed inside the engine (the requests batched beside it went on)."""
