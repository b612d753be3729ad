"""Public alias of :mod:`parplan.views.frames` (``parplan.frames.plan_frame`` and friends)."""
from .views.frames import *  # noqa: F401,F403
from .views.frames import __all__  # noqa: F401
