"""One router a resource: images (and upload search), reports, the service itself."""
