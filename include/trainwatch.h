/*
 * trainwatch.h — C ABI of libtrainwatch.so, the trainer-side publisher.
 *
 * A trainer publishes each batch (sample images, predictions, labels, loss),
 * epoch summaries and status changes into a shared-memory segment that the
 * trainwatch agent reads, and polls commands (pause, stop, ...) sent back
 * from the dashboard. No call blocks or waits on the agent; publishing a
 * batch costs at most one memcpy, and nothing when the agent would not read
 * it yet.
 *
 * Format and protocol: docs/shm.md. Mirrors src/shm/ffi.rs (ABI version 1).
 *
 * Return values: functions returning int give -1 on error; pointer-returning
 * ones give NULL. tw_last_error() then holds a message naming what is wrong.
 * A publisher handle is not thread-safe: use it from one thread at a time.
 */
#ifndef TRAINWATCH_H
#define TRAINWATCH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TW_ABI_VERSION 1

/* Tensor element type (tw_images.dtype). */
#define TW_DTYPE_U8 1
#define TW_DTYPE_F32 2
#define TW_DTYPE_F16 3

/* Memory order of the batch (tw_images.layout). */
#define TW_LAYOUT_NCHW 1
#define TW_LAYOUT_NHWC 2

/* tw_options.image_policy */
#define TW_IMAGES_AUTO 0   /* copy a batch only when the agent will read it soon */
#define TW_IMAGES_ALWAYS 1 /* copy every batch */

/* TrainingStatus (proto/metrics.proto) for tw_publish_status. */
#define TW_STATUS_UNKNOWN 0
#define TW_STATUS_INITIALIZING 1
#define TW_STATUS_RUNNING 2
#define TW_STATUS_PAUSED 3
#define TW_STATUS_COMPLETED 4
#define TW_STATUS_FAILED 5

/* ControlCommand.CommandType (proto/metrics.proto) in tw_command.command_type. */
#define TW_CMD_PAUSE_TRAINING 1
#define TW_CMD_RESUME_TRAINING 2
#define TW_CMD_STOP_TRAINING 3 /* parameter "grace_period_s" */
#define TW_CMD_ADJUST_BATCH_SIZE 4 /* parameter "batch_size" */
#define TW_CMD_CHANGE_LEARNING_RATE 5 /* parameter "learning_rate" */

#define TW_MAX_IMAGES 16
#define TW_PARAMS_CAP 488

typedef struct tw_publisher tw_publisher;

typedef struct tw_options {
    const char *run_name;     /* the segment's file name: [A-Za-z0-9._-], 1..128 */
    const char *shm_dir;      /* NULL: $TRAINWATCH_SHM_DIR, else /dev/shm/trainwatch */
    const char *model_name;   /* may be NULL */
    const char *dataset_name; /* may be NULL */
    const char *const *class_names;
    uint32_t class_count;
    uint32_t total_epochs;
    uint32_t batches_per_epoch;
    uint32_t batch_size;
    uint32_t frame_slots;     /* 0: default (3) */
    uint32_t event_slots;     /* 0: default (4096) */
    uint32_t control_slots;   /* 0: default (16) */
    uint32_t image_policy;    /* TW_IMAGES_AUTO or TW_IMAGES_ALWAYS */
    uint64_t frame_capacity;  /* tensor bytes per frame; 0: 16x3x224x224 f32 */
    uint32_t mode;            /* file mode; 0: 0600 (+ ACL for the agent) */
} tw_options;

typedef struct tw_images {
    const void *data; /* count*channels*height*width elements, C-contiguous */
    uint64_t len;     /* bytes at data */
    uint32_t dtype;   /* TW_DTYPE_* */
    uint32_t layout;  /* TW_LAYOUT_* */
    uint32_t count;   /* images; past 16 (or the frame capacity) the rest is dropped */
    uint32_t channels; /* 1 or 3 */
    uint32_t height;
    uint32_t width;
    uint32_t has_norm; /* 1: pixels were normalized (x - mean) / std */
    float mean[3];
    float std[3];
} tw_images;

typedef struct tw_batch {
    uint32_t epoch;
    uint32_t batch_idx;
    float loss;
    uint32_t sample_count;      /* entries in each array below; past 16 are dropped */
    const int32_t *predictions; /* predicted class per sample */
    const float *confidences;   /* confidence per sample */
    const int32_t *labels;      /* ground truth per sample */
    const tw_images *images;    /* NULL: no images */
} tw_batch;

typedef struct tw_command {
    uint64_t seq;          /* from 1; acknowledge with tw_ack_command */
    uint32_t command_type; /* TW_CMD_* */
    uint32_t params_len;   /* bytes used in params */
    uint64_t timestamp_unix_ns;
    char params[TW_PARAMS_CAP]; /* "key\0value\0" pairs, UTF-8 */
} tw_command;

uint32_t tw_abi_version(void);
uint32_t tw_format_version(void);
const char *tw_last_error(void);

/* Creates <shm_dir>/<run_name> (replacing an older one), group read/write. */
tw_publisher *tw_publisher_create(const tw_options *opts);
/* 1 when the next batch would be copied: prepare images only then. */
int tw_wants_frame(tw_publisher *p);
/* 1 copied, 0 skipped (agent would not read it yet; progress recorded). */
int tw_publish_batch(tw_publisher *p, const tw_batch *batch);
/* Copy regardless of the policy: 1. */
int tw_publish_frame(tw_publisher *p, const tw_batch *batch);
/* Record a batch's numbers without copying it: 0. */
int tw_record_progress(tw_publisher *p, uint32_t epoch, uint32_t batch_idx, float loss);
/* Lossless events: the event number (>= 1). */
int64_t tw_publish_epoch(tw_publisher *p, uint32_t epoch, float average_loss, float average_accuracy);
/* An epoch summary with n named metrics (keys[i] = values[i], at most 18,
   checked as tw_log's; format 2): the event number, or -1 and nothing
   published. */
int64_t tw_publish_epoch_metrics(tw_publisher *p, uint32_t epoch, float average_loss,
                                 float average_accuracy, const char *const *keys,
                                 const double *values, size_t n);
/* Logs n named scalars at step (keys[i] = values[i]), lossless. Keys: 1-128
   of [A-Za-z0-9._/-]; values finite; a bad one is refused naming the key
   and the value, and nothing is written. Returns the point seq of the last
   point, or -1 (tw_last_error). */
int64_t tw_log(tw_publisher *p, int64_t step, const char *const *keys, const double *values, size_t n);
int64_t tw_publish_status(tw_publisher *p, uint32_t status, const char *message);
/* Oldest unacknowledged command: 1 (filled), 0 none, -1 malformed (skipped). */
int tw_next_command(tw_publisher *p, tw_command *out);
/* The trainer applied commands up to seq: 0. */
int tw_ack_command(tw_publisher *p, uint64_t seq);
/* Alive without publishing (long evaluation): 0. */
int tw_heartbeat(tw_publisher *p);
/* Path of the segment, valid until tw_publisher_close. */
const char *tw_segment_path(tw_publisher *p);
/* Marks the run closed and frees p; unlink != 0 also removes the file. */
int tw_publisher_close(tw_publisher *p, int unlink);

#ifdef __cplusplus
}
#endif

#endif /* TRAINWATCH_H */
