#ifndef BROKERKIT_CRDKAFKA_SHIM_H
#define BROKERKIT_CRDKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#include <stdint.h>

/* Swift cannot call C variadics: rd_kafka_producev wrapped with fixed arguments.
 * On success librdkafka owns `headers`; on failure the caller still does. */
static inline rd_kafka_resp_err_t bk_produce(rd_kafka_t *rk, const char *topic, int32_t partition,
                                             const void *payload, size_t len, const void *key, size_t keylen,
                                             rd_kafka_headers_t *headers, int64_t timestamp_ms, void *opaque) {
    if (headers != NULL) {
        return rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE((void *)payload, len),
                                 RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_HEADERS(headers),
                                 RD_KAFKA_V_TIMESTAMP(timestamp_ms), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    }
    return rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE((void *)payload, len),
                             RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_TIMESTAMP(timestamp_ms),
                             RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
}

/* Field access Swift would otherwise need pointer gymnastics for. */
static inline int32_t bk_tp_partition(const rd_kafka_topic_partition_list_t *list, int i) { return list->elems[i].partition; }
static inline const char *bk_tp_topic(const rd_kafka_topic_partition_list_t *list, int i) { return list->elems[i].topic; }
static inline int64_t bk_tp_offset(const rd_kafka_topic_partition_list_t *list, int i) { return list->elems[i].offset; }
static inline void bk_tp_set_offset(rd_kafka_topic_partition_list_t *list, int i, int64_t offset) { list->elems[i].offset = offset; }
static inline rd_kafka_resp_err_t bk_tp_err(const rd_kafka_topic_partition_list_t *list, int i) { return list->elems[i].err; }

/* librdkafka's in-process mock cluster (rdkafka_mock.h is not shipped by Debian's
 * librdkafka-dev 2.0.2, but the symbols are exported). Prototypes as in upstream v2.0.2. */
typedef struct rd_kafka_mock_cluster_s rd_kafka_mock_cluster_t;
rd_kafka_mock_cluster_t *rd_kafka_mock_cluster_new(rd_kafka_t *rk, int broker_cnt);
void rd_kafka_mock_cluster_destroy(rd_kafka_mock_cluster_t *mcluster);
const char *rd_kafka_mock_cluster_bootstraps(const rd_kafka_mock_cluster_t *mcluster);
void rd_kafka_mock_push_request_errors_array(rd_kafka_mock_cluster_t *mcluster, int16_t ApiKey, size_t cnt,
                                             const rd_kafka_resp_err_t *errors);
rd_kafka_resp_err_t rd_kafka_mock_topic_create(rd_kafka_mock_cluster_t *mcluster, const char *topic,
                                               int partition_cnt, int replication_factor);
rd_kafka_resp_err_t rd_kafka_mock_broker_set_down(rd_kafka_mock_cluster_t *mcluster, int32_t broker_id);
rd_kafka_resp_err_t rd_kafka_mock_broker_set_up(rd_kafka_mock_cluster_t *mcluster, int32_t broker_id);
#endif
