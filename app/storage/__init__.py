"""Where bytes are kept: the object store and the image format sniffing that checks them."""
