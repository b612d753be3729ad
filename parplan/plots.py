"""Public alias of the figures in :mod:`parplan.views` (``parplan.plots.roofline``, ``parplan.plots.scaling``, ...)."""
from .views.plots import *  # noqa: F401,F403
from .views.scaling_plots import scaling, sweep  # noqa: F401
from .views.plots import __all__ as _plan_figures

__all__ = [*_plan_figures, "scaling", "sweep"]
