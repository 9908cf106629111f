"""Upload one file with the AWS Common Runtime's S3 client; prints the seconds it took.

The CRT baseline of ``benchmarks.upload``, run by a Python that has ``awscrt`` (it is not a
sciflow dependency): ``python benchmarks/baselines/crt_upload.py FILE ENDPOINT BUCKET KEY``.
boto3's CRT transfer manager cannot be used here: it always connects with TLS to the AWS
endpoint of its region, ignoring ``AWS_ENDPOINT_URL``. So this drives the same CRT S3 client
(``awscrt.s3.S3Client``, what that manager wraps) directly, with TLS off and the request's
host set to the plain-HTTP endpoint (moto), and the same defaults boto3 gives it: multipart
with 8 MiB parts, CRC32 checksums computed by the CRT, credentials from the environment.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlsplit


def main(argv: list[str]) -> int:
    from awscrt.auth import (
        AwsCredentialsProvider,
        AwsSignatureType,
        AwsSigningAlgorithm,
        AwsSigningConfig,
    )
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
    from awscrt.s3 import (
        S3ChecksumAlgorithm,
        S3ChecksumConfig,
        S3ChecksumLocation,
        S3Client,
        S3RequestTlsMode,
        S3RequestType,
    )

    path, endpoint, bucket, key = argv
    host = urlsplit(endpoint).netloc
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    credentials = AwsCredentialsProvider.new_static(
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        os.environ.get("AWS_SESSION_TOKEN"),
    )
    loops = EventLoopGroup()
    bootstrap = ClientBootstrap(loops, DefaultHostResolver(loops))
    signing = AwsSigningConfig(
        algorithm=AwsSigningAlgorithm.V4,
        signature_type=AwsSignatureType.HTTP_REQUEST_HEADERS,
        service="s3",
        region=region,
        credentials_provider=credentials,
    )
    client = S3Client(
        bootstrap=bootstrap,
        region=region,
        tls_mode=S3RequestTlsMode.DISABLED,
        signing_config=signing,
        part_size=8 * 1024 * 1024,  # boto3's default chunk size for the CRT, too
    )
    size = os.path.getsize(path)
    headers = HttpHeaders(
        [
            ("Host", host),
            ("Content-Length", str(size)),
            ("Content-Type", "application/octet-stream"),
        ]
    )
    request = HttpRequest("PUT", f"/{bucket}/{key}", headers)
    started = time.perf_counter()
    upload = client.make_request(
        type=S3RequestType.PUT_OBJECT,
        request=request,
        send_filepath=path,
        checksum_config=S3ChecksumConfig(
            algorithm=S3ChecksumAlgorithm.CRC32, location=S3ChecksumLocation.HEADER
        ),
    )
    upload.finished_future.result()
    print(f"{time.perf_counter() - started:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
