"""Models: finding and fingerprinting them (`fingerprint`), and the text encoders on torch
or OpenVINO (`encoders`, `openvino_backend`)."""
