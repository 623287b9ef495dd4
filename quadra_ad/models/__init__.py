"""Model construction glue: anomalib models built from config, backbone weights offline."""
