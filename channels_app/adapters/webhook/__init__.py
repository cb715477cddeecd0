"""A generic signed JSON webhook for systems that are not chat platforms."""
