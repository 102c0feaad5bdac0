"""Helpers shared by the test folders (fixtures stay in the conftest files).

kube            an HTTP client and a kubectl runner for the local Kubernetes API, a sample CRD, polling
serving         publish demo models, run and talk to real serving processes
standin_server  a stand-in for the serving process that the local kubelet runs in its tests
tcp_proxy       a fault-injecting TCP proxy (forward, slow, refuse, blackhole) for S3 outages
"""
