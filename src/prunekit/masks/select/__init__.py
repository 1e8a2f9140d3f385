"""The selection engine: which blocks to remove, exactly, near the memory-bandwidth floor.

* :mod:`.reference`: the exact radix search on sortable keys, for any block sizes (the
  answer the counting engine must give, and the path for partial edge blocks);
* :mod:`.counting`: the counting engine in one process (local and global scope);
* :mod:`.multirank`: the counting engine across torch.distributed ranks;
* their parts: :mod:`.brackets` (samples and brackets), :mod:`.passes` (one op's counting
  pass and verdict), :mod:`.solve` (exact counts from the passes), :mod:`.scored` (the op
  types), :mod:`.kernels` (numpy kernels), :mod:`.threads` (ops two at a time),
  :mod:`.memory` (freed memory back to the system).
"""
