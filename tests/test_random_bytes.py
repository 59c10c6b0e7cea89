"""The pool that registration ids and CoAP tokens are cut from."""

from __future__ import annotations

import os

from lwm2m_server.security.random_bytes import RandomBytes


def test_slices_do_not_repeat_across_refills():
    pool = RandomBytes()
    taken = [pool.take(8) for _ in range(3 * 4096 // 8)]  # three pools' worth
    assert all(len(piece) == 8 for piece in taken)
    assert len(set(taken)) == len(taken)
    assert len(pool.take(10_000)) == 10_000  # more than a pool at once


def test_a_forked_child_does_not_hand_out_the_parents_next_bytes():
    pool = RandomBytes()
    pool.take(8)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write_end, pool.take(8))
        os._exit(0)
    os.close(write_end)
    from_child = os.read(read_end, 8)
    os.close(read_end)
    os.waitpid(child, 0)
    assert len(from_child) == 8 and from_child != pool.take(8)
