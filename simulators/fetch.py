"""Fetching a :class:`~simulators.download.BlockDownload` with aiocoap (the adapter).

One GET per block, with an explicit Block2 option and aiocoap's own block-wise
handling off, so the device decides where to start (resume) and sees each
block's ETag. Thin: the bookkeeping is in :mod:`simulators.download`.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import aiocoap
import aiocoap.error
from aiocoap import Code, Message
from aiocoap.optiontypes import BlockOption

from .download import BlockDownload, DownloadError, check_uri

BlockCallback = Callable[[BlockDownload], None]
"""Called after every block taken; may raise to stop the download (a test's power cut)."""


async def fetch(context: aiocoap.Context, download: BlockDownload, *, timeout: float = 10.0,
                attempts: int = 3, on_block: BlockCallback | None = None) -> bytes:
    """Fetch until complete and return the bytes; :class:`DownloadError` otherwise.

    ``timeout`` bounds one block exchange; after ``attempts`` exchanges without an
    answer the connection counts as lost.
    """
    check_uri(download.uri)
    while not download.complete:
        number, exp = download.next_block()
        try:
            request = Message(code=Code.GET, uri=download.uri)
        except (ValueError, aiocoap.error.Error) as error:
            raise DownloadError("uri", f"{download.uri!r}: {error}") from None
        request.opt.block2 = BlockOption.BlockwiseTuple(number, False, exp)
        if number == 0:
            request.opt.size2 = 0  # ask for the total size (RFC 7959 §4)
        response = await _exchange(context, request, download.uri, timeout, attempts)
        if not response.code.is_successful():
            text = response.payload.decode("utf-8", "replace")[:100]
            kind = "connection" if response.code.class_ == 5 else "uri"
            raise DownloadError(kind, f"{download.uri} answered {response.code.dotted} {text}".rstrip())
        block = response.opt.block2
        download.on_block(
            payload=bytes(response.payload),
            number=None if block is None else block.block_number,
            more=False if block is None else bool(block.more),
            exp=None if block is None else block.size_exponent,
            etag=response.opt.etag,
            size2=response.opt.size2,
        )
        if on_block is not None:
            on_block(download)
    return bytes(download.data)


async def _exchange(context: aiocoap.Context, request: Message, uri: str, timeout: float,
                    attempts: int) -> Message:
    last = ""
    for _ in range(max(1, attempts)):
        pending = context.request(request.copy(), handle_blockwise=False)
        try:
            async with asyncio.timeout(timeout):
                return await pending.response
        except TimeoutError:
            pending.response.cancel()
            last = f"no answer within {timeout:g} s"
        except (aiocoap.error.ResolutionError, aiocoap.error.MalformedUrlError,
                aiocoap.error.IncompleteUrlError) as error:
            raise DownloadError("uri", f"{uri}: {error or type(error).__name__}") from None
        except aiocoap.error.Error as error:
            last = str(error) or type(error).__name__
    raise DownloadError("connection", f"{uri}: {last}")
