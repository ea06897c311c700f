"""The embedded engine: runs a whole app locally and drives each vertex process as `numa` does."""
