/*
 * Unit tests for the virtqueue walker and the device state tables: a
 * VirtioDevice on a fake bus with 1 MiB of "guest RAM", rings at fixed
 * addresses, and hostile descriptor tables.
 *
 *     ring layout in the fake RAM:  desc 0x1000, avail 0x2000, used 0x3000,
 *     buffers from 0x10000, indirect tables at 0x8000
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "devices/virtio.h"
#include "devices/vmstate.h"

#define RAM_BYTES (1u << 20)
#define QSIZE 8

typedef struct Fixture {
    DevBus bus;
    uint8_t *ram;
    VirtioDevice vdev;
    VirtQueueElement elem;
    int interrupts;
} Fixture;

static const VirtioDeviceOps dummy_ops = {
    .name = "virtio-test",
    .device_id = 2,
};

static void count_irq(void *opaque, uint16_t vector)
{
    ((Fixture *)opaque)->interrupts++;
}

static void set_desc(Fixture *f, uint64_t table, int i, uint64_t addr,
                     uint32_t len, uint16_t flags, uint16_t next)
{
    VirtqDesc d = { addr, len, flags, next };
    memcpy(f->ram + table + 16 * i, &d, sizeof(d));
}

static void make_avail(Fixture *f, uint16_t head)
{
    uint16_t *avail = (uint16_t *)(f->ram + 0x2000);
    avail[2 + (avail[1] % QSIZE)] = head;
    avail[1]++;
}

static void setup(Fixture *f, uint64_t features)
{
    memset(f, 0, sizeof(*f));
    f->ram = g_malloc0(RAM_BYTES);
    dev_bus_init(&f->bus);
    dev_bus_add_ram(&f->bus, 0, RAM_BYTES, f->ram);
    virtio_device_init(&f->vdev, &dummy_ops, &f->bus, 0, 1, 256, 0);
    f->vdev.transport.opaque = f;
    f->vdev.transport.notify_vector = count_irq;
    f->vdev.guest_features = features | (1ull << VIRTIO_F_VERSION_1);
    f->vdev.status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                     VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK;
    f->vdev.vq[0].size = QSIZE;
    f->vdev.vq[0].desc_gpa = 0x1000;
    f->vdev.vq[0].avail_gpa = 0x2000;
    f->vdev.vq[0].used_gpa = 0x3000;
    virtio_queue_enable(&f->vdev, 0);
    g_assert_true(f->vdev.vq[0].enabled);
    virtqueue_element_init(&f->elem);
}

static void teardown(Fixture *f)
{
    virtqueue_element_free(&f->elem);
    virtio_device_cleanup(&f->vdev);
    dev_bus_destroy(&f->bus);
    g_free(f->ram);
}

static void test_pop_chain_and_push(void)
{
    Fixture f;
    uint16_t *used;

    setup(&f, 0);
    set_desc(&f, 0x1000, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 3);
    set_desc(&f, 0x1000, 3, 0x11000, 4096, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 5);
    set_desc(&f, 0x1000, 5, 0x12000, 1, VIRTQ_DESC_F_WRITE, 0);
    make_avail(&f, 0);
    g_assert_cmpint(virtqueue_pop(&f.vdev.vq[0], &f.elem), ==, 1);
    g_assert_cmpuint(f.elem.out_num, ==, 1);
    g_assert_cmpuint(f.elem.in_num, ==, 2);
    g_assert_cmpuint(f.elem.in_bytes, ==, 4097);
    g_assert_true(f.elem.out[0].iov_base == f.ram + 0x10000);
    g_assert_cmpint(virtqueue_pop(&f.vdev.vq[0], &f.elem), ==, 0);
    virtqueue_push(&f.vdev.vq[0], &f.elem, 4097);
    virtqueue_notify(&f.vdev.vq[0]);
    used = (uint16_t *)(f.ram + 0x3000);
    g_assert_cmpuint(used[1], ==, 1);
    g_assert_cmpuint(*(uint32_t *)(f.ram + 0x3004), ==, 0);
    g_assert_cmpuint(*(uint32_t *)(f.ram + 0x3008), ==, 4097);
    g_assert_cmpint(f.interrupts, ==, 1);
    g_assert_false(virtio_broken(&f.vdev));
    teardown(&f);
}

static void expect_broken(Fixture *f)
{
    g_assert_cmpint(virtqueue_pop(&f->vdev.vq[0], &f->elem), ==, -EIO);
    g_assert_true(virtio_broken(&f->vdev));
    g_assert_true(f->vdev.status & VIRTIO_STATUS_NEEDS_RESET);
    /* once broken, the queue yields nothing until reset */
    g_assert_cmpint(virtqueue_pop(&f->vdev.vq[0], &f->elem), ==, 0);
}

static void test_loop_needs_reset(void)
{
    Fixture f;

    setup(&f, 0);
    set_desc(&f, 0x1000, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
    set_desc(&f, 0x1000, 1, 0x10000, 16, VIRTQ_DESC_F_NEXT, 0);
    make_avail(&f, 0);
    expect_broken(&f);
    /* the device works again after a reset */
    virtio_reset(&f.vdev);
    g_assert_false(virtio_broken(&f.vdev));
    teardown(&f);
}

static void test_buffer_outside_ram(void)
{
    Fixture f;

    setup(&f, 0);
    set_desc(&f, 0x1000, 0, RAM_BYTES - 8, 16, 0, 0);   /* straddles the end */
    make_avail(&f, 0);
    expect_broken(&f);
    teardown(&f);
}

static void test_next_out_of_table(void)
{
    Fixture f;

    setup(&f, 0);
    set_desc(&f, 0x1000, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, QSIZE);
    make_avail(&f, 0);
    expect_broken(&f);
    teardown(&f);
}

static void test_head_out_of_range_and_avail_jump(void)
{
    Fixture f;
    uint16_t *avail;

    setup(&f, 0);
    make_avail(&f, QSIZE + 3);
    expect_broken(&f);
    teardown(&f);

    setup(&f, 0);
    avail = (uint16_t *)(f.ram + 0x2000);
    avail[1] = QSIZE + 1;
    expect_broken(&f);
    teardown(&f);
}

static void test_indirect(void)
{
    Fixture f;

    setup(&f, 1ull << VIRTIO_F_INDIRECT_DESC);
    set_desc(&f, 0x8000, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
    set_desc(&f, 0x8000, 1, 0x11000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
    set_desc(&f, 0x8000, 2, 0x12000, 1, VIRTQ_DESC_F_WRITE, 0);
    set_desc(&f, 0x1000, 4, 0x8000, 48, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(&f, 4);
    g_assert_cmpint(virtqueue_pop(&f.vdev.vq[0], &f.elem), ==, 1);
    g_assert_cmpuint(f.elem.head, ==, 4);
    g_assert_cmpuint(f.elem.out_num + f.elem.in_num, ==, 3);
    teardown(&f);

    /* an indirect table that loops on itself */
    setup(&f, 1ull << VIRTIO_F_INDIRECT_DESC);
    set_desc(&f, 0x8000, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
    set_desc(&f, 0x8000, 1, 0x10000, 16, VIRTQ_DESC_F_NEXT, 0);
    set_desc(&f, 0x1000, 0, 0x8000, 32, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(&f, 0);
    expect_broken(&f);
    teardown(&f);

    /* nested indirect, and indirect without the feature */
    setup(&f, 1ull << VIRTIO_F_INDIRECT_DESC);
    set_desc(&f, 0x8000, 0, 0x8000, 16, VIRTQ_DESC_F_INDIRECT, 0);
    set_desc(&f, 0x1000, 0, 0x8000, 16, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(&f, 0);
    expect_broken(&f);
    teardown(&f);

    setup(&f, 0);
    set_desc(&f, 0x1000, 0, 0x8000, 16, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(&f, 0);
    expect_broken(&f);
    teardown(&f);
}

static void test_queue_size_not_power_of_two(void)
{
    Fixture f;

    setup(&f, 0);
    virtio_reset(&f.vdev);
    f.vdev.status = VIRTIO_STATUS_DRIVER_OK;
    f.vdev.vq[0].size = 6;
    f.vdev.vq[0].desc_gpa = 0x1000;
    f.vdev.vq[0].avail_gpa = 0x2000;
    f.vdev.vq[0].used_gpa = 0x3000;
    virtio_queue_enable(&f.vdev, 0);
    g_assert_false(f.vdev.vq[0].enabled);
    g_assert_true(virtio_broken(&f.vdev));
    teardown(&f);

    /* rings past the end of RAM */
    setup(&f, 0);
    virtio_reset(&f.vdev);
    f.vdev.vq[0].size = QSIZE;
    f.vdev.vq[0].desc_gpa = RAM_BYTES - 64;
    virtio_queue_enable(&f.vdev, 0);
    g_assert_false(f.vdev.vq[0].enabled);
    g_assert_true(virtio_broken(&f.vdev));
    teardown(&f);
}

static void test_event_idx_suppresses_interrupts(void)
{
    Fixture f;
    uint16_t *avail;

    setup(&f, 1ull << VIRTIO_F_EVENT_IDX);
    avail = (uint16_t *)(f.ram + 0x2000);
    avail[2 + QSIZE] = 5;       /* used_event: interrupt after entry 5 */
    for (int i = 0; i < 8; i++) {
        set_desc(&f, 0x1000, i, 0x10000, 16, 0, 0);
        make_avail(&f, i);
        g_assert_cmpint(virtqueue_pop(&f.vdev.vq[0], &f.elem), ==, 1);
        virtqueue_push(&f.vdev.vq[0], &f.elem, 0);
        virtqueue_notify(&f.vdev.vq[0]);
    }
    /* the first push always signals; then only crossing used_event (5) */
    g_assert_cmpint(f.interrupts, ==, 2);
    /* re-enabling publishes avail_event = the driver's avail idx */
    g_assert_false(virtqueue_set_notification(&f.vdev.vq[0], true));
    g_assert_cmpuint(*(uint16_t *)(f.ram + 0x3000 + 4 + 8 * QSIZE), ==, 8);
    teardown(&f);
}

static void test_features_ok_refuses_unknown(void)
{
    Fixture f;

    setup(&f, 0);
    virtio_reset(&f.vdev);
    f.vdev.guest_features = (1ull << VIRTIO_F_VERSION_1) | (1ull << 40);
    virtio_set_status(&f.vdev, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                      VIRTIO_STATUS_FEATURES_OK);
    g_assert_false(f.vdev.status & VIRTIO_STATUS_FEATURES_OK);
    virtio_reset(&f.vdev);
    f.vdev.guest_features = 0;          /* legacy driver: no VERSION_1 */
    virtio_set_status(&f.vdev, VIRTIO_STATUS_FEATURES_OK);
    g_assert_false(f.vdev.status & VIRTIO_STATUS_FEATURES_OK);
    teardown(&f);
}

static void test_vmstate_roundtrip(void)
{
    Fixture f, g;
    g_autoptr(GByteArray) out = g_byte_array_new();
    const uint8_t *p;
    size_t len;
    GError *err = NULL;

    setup(&f, 1ull << VIRTIO_F_EVENT_IDX);
    f.vdev.vq[0].last_avail_idx = 77;
    f.vdev.vq[0].used_idx = 75;
    f.vdev.config_vector = 3;
    vmstate_save(&virtio_device_vmstate, &f.vdev, out);
    g_assert_cmpuint(out->len, ==,
                     vmstate_size(&virtio_device_vmstate, 1));
    setup(&g, 0);
    virtio_reset(&g.vdev);
    p = out->data;
    len = out->len;
    g_assert_true(vmstate_load(&virtio_device_vmstate, &g.vdev, 1, &p, &len,
                               &err));
    g_assert_cmpuint(len, ==, 0);
    g_assert_cmpuint(g.vdev.guest_features, ==, f.vdev.guest_features);
    g_assert_cmpuint(g.vdev.vq[0].last_avail_idx, ==, 77);
    g_assert_cmpuint(g.vdev.vq[0].used_idx, ==, 75);
    g_assert_cmpuint(g.vdev.vq[0].desc_gpa, ==, 0x1000);
    g_assert_true(g.vdev.vq[0].enabled);
    g_assert_cmpuint(g.vdev.config_vector, ==, 3);
    /* a version we do not know, and a short section, are refused */
    p = out->data;
    len = out->len;
    g_assert_false(vmstate_load(&virtio_device_vmstate, &g.vdev, 2, &p, &len,
                                &err));
    g_clear_error(&err);
    len = out->len - 1;
    g_assert_false(vmstate_load(&virtio_device_vmstate, &g.vdev, 1, &p, &len,
                                &err));
    g_clear_error(&err);
    teardown(&f);
    teardown(&g);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/devices/virtio/pop-chain-and-push", test_pop_chain_and_push);
    g_test_add_func("/devices/virtio/loop-needs-reset", test_loop_needs_reset);
    g_test_add_func("/devices/virtio/buffer-outside-ram", test_buffer_outside_ram);
    g_test_add_func("/devices/virtio/next-out-of-table", test_next_out_of_table);
    g_test_add_func("/devices/virtio/head-and-avail-jump",
                    test_head_out_of_range_and_avail_jump);
    g_test_add_func("/devices/virtio/indirect", test_indirect);
    g_test_add_func("/devices/virtio/queue-size-and-rings",
                    test_queue_size_not_power_of_two);
    g_test_add_func("/devices/virtio/event-idx", test_event_idx_suppresses_interrupts);
    g_test_add_func("/devices/virtio/features-ok", test_features_ok_refuses_unknown);
    g_test_add_func("/devices/vmstate/virtio-roundtrip", test_vmstate_roundtrip);
    return g_test_run();
}
