"""Test doubles shared by the storage tests."""

import io


class CrashingReader(io.BytesIO):
    """A file object whose read() fails once ``limit`` bytes have been handed out."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self.limit = limit

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or self.tell() + size > self.limit:
            raise OSError("simulated crash mid-upload")
        return super().read(size)
