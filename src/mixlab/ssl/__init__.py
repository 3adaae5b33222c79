"""Self-supervised objectives. So far: SDMP's virtual labels (:mod:`mixlab.ssl.sdmp`); the MoCo v3 and
DINO frameworks (issue 14) are still to be built on them."""
