"""The local web app of ``neuralcodes serve`` (see :mod:`neuralcodes.web.app`)."""

from neuralcodes.web.app import create_app
from neuralcodes.web.middleware import LOCAL_HOSTS, BodyBudget, is_loopback
from neuralcodes.web.service import MAX_K, ServedRun
from neuralcodes.web.uploads import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    UPLOAD_FORMATS,
    UploadRejected,
    decode_upload,
)

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "LOCAL_HOSTS", "MAX_K",
           "UPLOAD_FORMATS", "BodyBudget", "ServedRun", "UploadRejected", "create_app",
           "decode_upload", "is_loopback"]
