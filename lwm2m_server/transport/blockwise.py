"""Block-wise transfers the adapter runs itself (RFC 7959): module downloads served one
Block2 block at a time from disk, request bodies sent one Block1 block at a time, and
answers fetched block by block on the fast path.

aiocoap's own Block1 sending copies the whole request for every block (a quarter of a
push's CPU) and has no bound on a block the device acknowledged and never answered;
here each block is one exchange with its own timeout, built by the caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiocoap import Code, Message, optiontypes

from .messages import Download

Exchange = Callable[[Message], Awaitable[Message]]
"""Send one request, await its response (one block of it)."""

SendBlock = Callable[[int, bool, int, bytes, object], Awaitable[Message]]
"""``(number, more, size exponent, payload, remote or None) → the device's response``:
send one block (from ``remote``'s source address, once known) and await its answer."""


class UnexpectedBlock1(Exception):
    """The device's Block1 answers do not fit the transfer."""


class UnexpectedBlock2(Exception):
    """The device's Block2 answers do not fit the transfer."""


@dataclass(frozen=True, slots=True)
class BlockAnswer:
    """One block of a download, as either path encodes it."""

    code: str
    """``2.05``, or ``4.02`` for a block past the end, ``5.00`` when the file cannot be read."""
    payload: bytes
    """The block, or the reason."""
    block2: tuple[int, bool, int] | None = None
    """(number, more, size exponent) of the Block2 option; None without one."""
    size2: int | None = None
    """Size2: the file's size, in the first block or when asked."""
    etag: bytes = b""
    content_format: int | None = None


def block_of(download: Download, wanted: tuple[int, int] | None, size2_asked: bool, block_exp: int) -> BlockAnswer:
    """Block ``wanted`` = (number, size exponent) of ``download`` (RFC 7959 §2.4), any block
    number, so a device resumes where it stopped; blocks of at most ``2**(block_exp+4)``
    bytes (a smaller exponent asked for is honoured, a larger one renumbered)."""
    exp = min(wanted[1], block_exp) if wanted is not None else block_exp
    size = 1 << (exp + 4)
    number = wanted[0] if wanted is not None else 0
    if wanted is not None and wanted[1] > exp:  # renumber for our smaller blocks
        number = wanted[0] << (wanted[1] - exp)
    offset = number * size
    if offset >= download.size and not (offset == 0 and download.size == 0):
        return BlockAnswer("4.02", b"block beyond the end of the file")
    try:
        with open(download.path, "rb") as file:
            chunk = os.pread(file.fileno(), size, offset)
    except OSError as error:
        return BlockAnswer("5.00", f"cannot read: {error.strerror}".encode())
    more = offset + len(chunk) < download.size
    return BlockAnswer("2.05", chunk, (number, more, exp) if more or wanted is not None else None,
                       download.size if number == 0 or size2_asked else None, download.etag, download.content_format)


def block_message(answer: BlockAnswer) -> Message:
    """:func:`block_of`'s answer as an aiocoap message."""
    if answer.code != "2.05":
        return Message(code=Code.BAD_OPTION if answer.code == "4.02" else Code.INTERNAL_SERVER_ERROR,
                       payload=answer.payload)
    reply = Message(code=Code.CONTENT, payload=answer.payload, content_format=answer.content_format)
    reply.opt.etag = answer.etag
    if answer.block2 is not None:
        reply.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(*answer.block2)
    if answer.size2 is not None:
        reply.opt.size2 = answer.size2
    return reply


async def send_in_blocks(send: SendBlock, payload: bytes, exp: int) -> tuple[Message, int, int]:
    """Send ``payload`` in Block1 blocks of ``2**(exp+4)`` bytes, or the smaller size a
    device's 2.31 asks for, from the next block on. The device's final response (or
    its first error, or its answer when it ignored Block1), the blocks sent and the
    bytes they carried."""
    offset, remote, blocks = 0, None, 0
    while True:
        size = 1 << (exp + 4)
        number, more = offset // size, offset + size < len(payload)
        response = await send(number, more, exp, payload[offset:offset + size], remote)
        remote, blocks = response.remote, blocks + 1
        block1 = response.opt.block1
        if not response.code.is_successful() or block1 is None:  # refused, or Block1 ignored and answered
            return response, blocks, min(offset + size, len(payload))
        if block1.block_number != number:
            raise UnexpectedBlock1(f"answered block {block1.block_number} for block {number}")
        if not more:
            if block1.more or response.code == Code.CONTINUE:
                raise UnexpectedBlock1("asked for more data after the last block")
            return response, blocks, len(payload)
        offset += size
        exp = min(exp, block1.size_exponent)


async def receive_in_blocks(exchange: Exchange, request: Message, first: Message,
                            limit: int = 16 * 1024 * 1024) -> Message:
    """``first`` (the answer to ``request``) with the rest of its Block2 blocks fetched
    (RFC 7959 §2.4: the same request, a FETCH with its body too, asking block n+1 at the
    size the device chose) and joined into its payload. A device that answers a block out
    of turn, changes its ETag in between or goes past ``limit`` bytes fails the transfer."""
    parts, block, etag = [first.payload], first.opt.block2, first.opt.etag
    received = len(first.payload)
    while block is not None and block.more:
        follow = request.copy(mid=None, token=b"")
        follow.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(block.block_number + 1, False,
                                                                  block.size_exponent)
        follow.remote = first.remote
        answer = await exchange(follow)
        if not answer.code.is_successful():
            return answer
        following = answer.opt.block2
        if following is None or following.block_number != block.block_number + 1:
            raise UnexpectedBlock2(f"answered {following} for block {block.block_number + 1}")
        if answer.opt.etag != etag:
            raise UnexpectedBlock2("the resource changed during the transfer (another ETag)")
        received += len(answer.payload)
        if received > limit:
            raise UnexpectedBlock2(f"the answer is larger than {limit} bytes")
        parts.append(answer.payload)
        block = following
    first.payload = b"".join(parts)
    first.opt.block2 = None
    return first
