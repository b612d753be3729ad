"""Public alias of :mod:`parplan.views.plots` (``parplan.plots.roofline`` and friends)."""
from .views.plots import *  # noqa: F401,F403
from .views.plots import __all__  # noqa: F401
