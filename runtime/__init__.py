"""Process launchers for the real servers the stack runs on (Triton, redis-server), installed as
``genrec.runtime``. Used by the command lines, the tests and the benchmarks alike; the domain
package never imports them."""
