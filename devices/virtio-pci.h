/*
 * The virtio-pci modern transport (Virtual I/O Device 1.2, 4.1): vendor
 * capabilities pointing into one 64-bit memory BAR, MSI-X for interrupts.
 */
#ifndef FERRY_DEVICES_VIRTIO_PCI_H
#define FERRY_DEVICES_VIRTIO_PCI_H

#include "devices/pci.h"
#include "devices/virtio.h"

/* Layout of BAR 0 (each structure on its own page). */
#define VIRTIO_PCI_COMMON_OFF  0x0000
#define VIRTIO_PCI_ISR_OFF     0x1000
#define VIRTIO_PCI_DEVICE_OFF  0x2000
#define VIRTIO_PCI_NOTIFY_OFF  0x3000
#define VIRTIO_PCI_NOTIFY_MULT 4
#define VIRTIO_PCI_MSIX_TABLE  0x4000
#define VIRTIO_PCI_MSIX_PBA    0x5000
#define VIRTIO_PCI_BAR_SIZE    0x8000

typedef struct VirtioPci VirtioPci;

/* Plug vdev into the bus; vectors: one per queue plus one for config. */
VirtioPci *virtio_pci_new(PciBus *pb, VirtioDevice *vdev, GError **errp);
void virtio_pci_free(VirtioPci *vp);
PciDevice *virtio_pci_device(VirtioPci *vp);
/* Machine reset: the device and its PCI function back to power-on. */
void virtio_pci_reset(VirtioPci *vp);

#endif
