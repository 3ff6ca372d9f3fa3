"""The project's exceptions: each names the problem and the fix."""


class SwinV2Error(ValueError):
    """Base class: a ValueError, so callers that catch ValueError keep working."""


class ConfigError(SwinV2Error):
    """A model configuration that cannot be built (bad sizes, unknown names)."""


class InputError(SwinV2Error):
    """An input tensor the model cannot take (size, channels, dtype)."""


class CheckpointError(SwinV2Error):
    """A file that is not a usable checkpoint, or one that does not fit the model."""


class DataError(SwinV2Error):
    """A dataset that cannot be used (missing path, empty class folder, no images, corrupt IDX file)."""
