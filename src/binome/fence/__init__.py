"""Fencing: making sure a node can no longer run its guests before they run elsewhere.

One concern per module: ``result`` (:class:`~binome.fence.result.FenceResult`, secret
scrubbing), ``ipmi`` (IPMI-over-LAN power control with pyghmi), ``agent`` (external
``fence_*`` agents over the standard stdin protocol), ``device`` (the common
``FenceDevice`` protocol and the factory from a node's fence config), ``watchdog`` (the
self-fence supervisor process and the daemon's client for it). See ``docs/fencing.md``.
This file imports nothing, so importing one submodule never drags in the others.
"""
