/* C trainer for tests/shm.rs: include/trainwatch.h against libtrainwatch.so.
 * Usage: publish SHM_DIR. Publishes one frame and two events into
 * SHM_DIR/c_run, then closes it. Exit 0 on success. */
#include <stdio.h>
#include <string.h>

#include "trainwatch.h"

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    if (tw_abi_version() != TW_ABI_VERSION) return 3;

    tw_options bad;
    memset(&bad, 0, sizeof bad);
    bad.run_name = "../escape";
    bad.shm_dir = argv[1];
    if (tw_publisher_create(&bad) != NULL || strstr(tw_last_error(), "run name") == NULL) return 4;

    const char *classes[] = {"zero", "one"};
    tw_options o;
    memset(&o, 0, sizeof o);
    o.run_name = "c_run";
    o.shm_dir = argv[1];
    o.model_name = "lenet";
    o.dataset_name = "mnist";
    o.class_names = classes;
    o.class_count = 2;
    o.total_epochs = 3;
    o.batches_per_epoch = 7;
    o.batch_size = 2;
    o.image_policy = TW_IMAGES_ALWAYS;
    o.frame_capacity = 4096;
    o.event_slots = 16;
    tw_publisher *p = tw_publisher_create(&o);
    if (!p) {
        fprintf(stderr, "%s\n", tw_last_error());
        return 5;
    }
    /* Normalized images are float: mean/std undo a float transform. */
    float px[2 * 3 * 2 * 2];
    for (unsigned i = 0; i < sizeof px / sizeof px[0]; i++) px[i] = (float)(i * 3);
    tw_images im = {px, sizeof px, TW_DTYPE_F32, TW_LAYOUT_NCHW, 2, 3, 2, 2, 1,
                    {0.5f, 0.25f, 0.125f}, {2.0f, 4.0f, 8.0f}};
    int32_t preds[2] = {1, 0};
    float confs[2] = {0.75f, 0.5f};
    int32_t labels[2] = {1, 1};
    tw_batch b = {2, 6, 0.125f, 2, preds, confs, labels, &im};
    if (tw_wants_frame(p) != 1 || tw_publish_batch(p, &b) != 1) return 6;
    if (tw_publish_status(p, TW_STATUS_RUNNING, "from C") != 1) return 7;
    if (tw_publish_epoch(p, 2, 0.5f, 0.875f) != 2) return 8;
    /* Named scalars: point 1 is the batch's loss, then these two. */
    const char *keys[2] = {"val/loss", "lr"};
    double values[2] = {0.25, 0.001};
    if (tw_log(p, 41, keys, values, 2) != 3) return 11;
    const char *bad_key[1] = {"no spaces"};
    if (tw_log(p, 42, bad_key, values, 1) != -1) return 12;
    const char *mkeys[1] = {"val/acc"};
    double mvalues[1] = {0.9375};
    if (tw_publish_epoch_metrics(p, 3, 0.25f, 0.9375f, mkeys, mvalues, 1) != 3) return 13;
    tw_command c;
    if (tw_next_command(p, &c) != 0) return 9;
    printf("%s\n", tw_segment_path(p));
    return tw_publisher_close(p, 0) == 0 ? 0 : 10;
}
