"""Data preparation: public data sets in their published layouts -> verl parquet (see ``__main__`` and ``registry``)."""
