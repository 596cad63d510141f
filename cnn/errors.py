"""The one kind of error a user fixes by changing what they gave: `malaria` reports it as one
line and exit 2, like a bad option, however deep in a flow it was raised."""


class InputError(ValueError):
    """Bad input (a source, dataset, file, column, model name or setting); the message names
    it and says what is wrong."""
