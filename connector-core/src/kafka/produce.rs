//! [`KafkaClient::produce`]: a one-shot write that waits for every record's acknowledgement, on a
//! short-lived [`Producer`].

use crate::kafka::client::KafkaClient;
use crate::kafka::producer::Producer;
use crate::kafka::records::ProducerRecord;
use crate::record::RecordMetadata;
use crate::{Error, Result};

impl KafkaClient {
    /// Writes `records` and waits until Kafka acknowledged all of them (acks=all). For low-rate
    /// writes (offsets, dead letters, tests); streaming writers use a [`Producer`].
    ///
    /// # Errors
    /// The first delivery error, if any record could not be written.
    pub async fn produce(&self, records: Vec<ProducerRecord>) -> Result<Vec<RecordMetadata>> {
        let n = records.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (producer, mut deliveries) = Producer::<usize>::new(self.clone(), n);
        producer.send_all(records.into_iter().enumerate().map(|(i, r)| (r, i)).collect()).await?;
        producer.flush().await?;
        let mut out: Vec<Option<RecordMetadata>> = vec![None; n];
        let mut seen = 0;
        while seen < n {
            let Some(batch) = deliveries.recv().await else {
                return Err(Error::fatal(
                    "Kafka producer stopped before all records were delivered",
                ));
            };
            for d in batch {
                seen += 1;
                match d.result {
                    Ok(m) => {
                        if let Some(slot) = out.get_mut(d.tag) {
                            *slot = Some(m);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}
