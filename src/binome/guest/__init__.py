"""Guests: the VM config model (``config``), the QEMU runtime layer and its helpers.

Runtime layer (one module each): ``spec`` (what to launch, pure data), ``argv``
(the QEMU command line), ``accel`` (KVM-or-TCG probe), ``network`` (taps on
bridges), ``process`` (/proc, the exit wrapper, exit reasons), ``runtime``
(lifecycle, QMP, adoption, stats), ``console`` (serial console client).
This file imports nothing so importing one submodule never drags in the others.
"""
