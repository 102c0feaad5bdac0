"""A CRD's openAPIV3Schema and CEL rules applied to an object as the API server applies them (pure).

Used offline by `tmctl check` (a PR's manifests, before they reach a cluster) and by the embedded
stack's Kubernetes API. Needs `jsonschema` and `cel-python`: `pip install tradingmodel-operator[check]`.
"""
