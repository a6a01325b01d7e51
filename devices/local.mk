# devices/: what a guest sees on its buses.
libferry_a_SOURCES += \
	devices/bus.c devices/bus.h \
	devices/vmstate.c devices/vmstate.h \
	devices/serial.c devices/serial.h \
	devices/pci.c devices/pci.h \
	devices/virtio.c devices/virtio.h \
	devices/virtio-pci.c devices/virtio-pci.h \
	devices/virtio-blk.c devices/virtio-blk.h \
	devices/virtio-rng.c devices/virtio-rng.h \
	$(NULL)
