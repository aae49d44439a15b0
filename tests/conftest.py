"""Settings of the whole test session.

The tests train and run tiny models, where one intra-op thread per process is as fast
as several on an idle machine and far faster on a busy one: there, threads that wait
for each other spin against the other processes (a 10 s training took three minutes
with two threads on two loaded cores). Set before torch or NumPy's BLAS is imported,
and inherited by the servers and commands the tests start.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
