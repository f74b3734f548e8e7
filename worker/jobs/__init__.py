"""A job's life, in the order it happens: states, submit, collect, the retry rule."""
