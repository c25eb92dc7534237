"""The ``conveyor`` command line: thin commands over ``conveyor.app.Conveyor``."""
