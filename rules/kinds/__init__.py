"""One module per rule kind, each behind the small interface of `base.Kind`."""
