"""flowagent: a workflow-orchestration agent and its embedded server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flowagent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
