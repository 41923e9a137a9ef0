"""celeriac."""
