class DataError(ValueError):
    """Data cannot be loaded: missing, empty or undecodable input. One-line message."""
