"""Task apps the tests import, in-process and in worker or executor child processes."""
