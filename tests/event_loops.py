"""The event loops async tests run on, as anyio backends: asyncio's own and uvloop (the server's)."""

BACKENDS = {"asyncio": ("asyncio", {"use_uvloop": False}), "uvloop": ("asyncio", {"use_uvloop": True})}
