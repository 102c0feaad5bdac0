"""The S3 model store: bucket layout, version manifests, publishing and promotion."""
