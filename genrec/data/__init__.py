"""Data: the catalogue and event schema, the synthetic generator, the MovieLens loader, splits."""
