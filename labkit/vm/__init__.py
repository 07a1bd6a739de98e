"""The kernel's own dm-thin, in a VM: labkit's model held against the real thing.

This host has no device-mapper, so :mod:`labkit.vm` boots Debian's kernel (which has ``dm_thin_pool``)
under qemu through virtme-ng, over the host's own root filesystem, and runs commands and batches of
jobs there. Pieces:

* :mod:`~labkit.vm.runner` — :class:`VM`: boot, run one command, stream its output, time out, never
  leave a qemu behind; :func:`requirements` says what is missing and how to install it;
* :mod:`~labkit.vm.batch` — :func:`run_jobs`: many jobs, one boot (:mod:`~labkit.vm.guest` runs them
  in the guest, :mod:`~labkit.vm.guestjobs` are the jobs);
* :mod:`~labkit.vm.kernelpool` — :class:`KernelPool`: a kernel thin pool driven through device-mapper's ioctls
  (:mod:`labkit._sys.dm`, what dmsetup sends);
* :mod:`~labkit.vm.ops`, :mod:`~labkit.vm.diff` — random operation sequences, replayed on the model
  and on the kernel and compared (``labkit bench kernel-diff``);
* :mod:`~labkit.vm.formats` — labkit's thin_dump XML opens the kernel's data and the reverse.

The guest imports only the standard library and the modules above that say so (imports over 9p under
emulation are slow); ``diff`` and ``formats`` run on the host and use :mod:`labkit.thin`.
See docs/vm.md.

>>> from labkit.vm import VM, requirements
>>> isinstance(requirements().missing, tuple)
True
"""
from __future__ import annotations

from .batch import Batch, JobResult, run_jobs
from .runner import GUEST_TMP, VM, Requirements, VMResult, find_kernel, kill_running, requirements

__all__ = ["VM", "VMResult", "Requirements", "requirements", "find_kernel", "kill_running", "run_jobs", "Batch",
           "JobResult", "GUEST_TMP"]
