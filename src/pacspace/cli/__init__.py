"""The ``pacspace`` command line."""
