"""Keel's Python client. Importing it never imports the server.

from keel.sdk import Keel
keel = Keel()                       # http://127.0.0.1:8080, or KEEL_URL / KEEL_API_KEY
keel.chat("smollm2-135m-instruct", "Say hi")["choices"][0]["message"]["content"]
for chunk in keel.chat_stream("smollm2-135m-instruct", "Count to 3"): ...
keel.openai()                       # an openai.OpenAI client pointed at Keel
"""

from keel.sdk.client import Keel, KeelAPIError, KeelConnectionError

__all__ = ["Keel", "KeelAPIError", "KeelConnectionError"]
