"""Guests: the VM config model (``config``) and the QEMU runtime layer below it.

Runtime layer, one concern per module: ``spec`` (what to launch, pure data),
``argv`` (the QEMU command line, pure), ``paths`` (run-dir layout), ``accel``
(KVM-or-TCG probe), ``network`` (taps on bridges), ``process`` (/proc, the
exit wrapper, exit reasons), ``runtime`` (lifecycle, QMP, adoption, stats),
``console`` (serial console client), ``errors`` (``GuestError``).
This file imports nothing, so importing one submodule never drags in the others.
"""
