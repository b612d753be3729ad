"""The shipped spec files as package data (the wheel maps ``hardware/``, ``models/`` and
``validation/`` here; see ``parplan.specs.registry``). No code lives here."""
