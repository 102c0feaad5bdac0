"""Annotations the local kubelet writes so people and the local API can find a pod's process."""

PORT = "local-stack.trading.io/port"  # on Pods: the local port the process serves on
LOG_FILE = "local-stack.trading.io/log-file"  # on Pods: the file with the process output (kubectl logs)
URL = "local-stack.trading.io/url"  # on Services: the stable local proxy URL
