//! A camera's streams from its ONVIF media service (Media, ver10): the media service's address
//! (GetCapabilities or GetServices), the profiles (GetProfiles) and each video profile's RTSP URI
//! (GetStreamUri, RTP-Unicast over RTSP), with the same WS-Security credentials as the events;
//! and, for `probe`, whether the event service offers a motion topic (GetEventProperties).
//!
//! Everything in the replies is the camera's word: at most [`MAX_PROFILES`] profiles are asked
//! about, stream URIs must be rtsp:// URLs on the host of `camera.onvif.url` (unless
//! `allow_other_hosts`) and not longer than [`MAX_URI_CHARS`], and numbers that do not parse
//! leave the profile out rather than fail the whole search.

use serde::Serialize;

use super::device::{Device, Service};
use super::soap::CameraClock;
use super::xml::{Element, excerpt};
use super::{OnvifError, Operation, ns};
use crate::config::{OnvifConfig, Secret};

/// Profiles beyond this many are not asked about: real cameras have two to six.
const MAX_PROFILES: usize = 16;
/// Stream URIs longer than this are refused.
const MAX_URI_CHARS: usize = 2048;

/// Why a camera's streams could not be found; the message names the ONVIF step and the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MediaError(OnvifError);

impl MediaError {
    /// Whether the camera refused the credentials.
    pub fn is_not_authorized(&self) -> bool {
        matches!(self.0, OnvifError::NotAuthorized { .. })
            || matches!(&self.0, OnvifError::Http { status, .. } if status.starts_with("401"))
    }
}

/// A video profile of the camera and its stream's address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamProfile {
    pub token: String,
    pub name: String,
    /// As the camera names it: `H264`, `H265`, `JPEG`, `MPEG4`.
    pub encoding: String,
    pub width: u32,
    pub height: u32,
    /// The encoder's frame rate limit.
    pub fps: Option<f64>,
    pub bitrate_kbps: Option<u32>,
    /// Frames between keyframes (H.264's GovLength).
    pub gov_length: Option<u32>,
    /// The RTSP URI the camera gave, without credentials.
    pub uri: String,
}

impl StreamProfile {
    /// Whether the service can take this stream in: H.264 or H.265.
    pub fn is_h26x(&self) -> bool {
        matches!(self.encoding.to_ascii_uppercase().as_str(), "H264" | "H265" | "HEVC")
    }

    fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// For the state and logs: `onvif profile "Main" 1920x1080 H264`.
    pub fn describe(&self) -> String {
        format!(
            "onvif profile {:?} {}x{} {}",
            excerpt(&self.name),
            self.width,
            self.height,
            excerpt(&self.encoding)
        )
    }
}

/// What the media service said: the camera's clock against ours, and its video profiles.
#[derive(Debug, Clone)]
pub struct MediaReport {
    pub clock_offset_s: f64,
    pub profiles: Vec<StreamProfile>,
}

/// Asks `camera`'s media service for its video profiles and their RTSP URIs.
pub async fn find_streams(
    camera: &str,
    config: &OnvifConfig,
    password: Option<Secret>,
) -> Result<MediaReport, MediaError> {
    let device = Device::new(camera.to_owned(), config, password).map_err(MediaError)?;
    let clock = device.clock().await.map_err(MediaError)?;
    let media_url = device.service(Service::Media, &clock).await.map_err(MediaError)?;
    let mut profiles = get_profiles(&device, &media_url, &clock).await.map_err(MediaError)?;
    for profile in &mut profiles {
        profile.uri = get_stream_uri(&device, &media_url, &clock, &profile.token)
            .await
            .map_err(MediaError)?;
    }
    Ok(MediaReport {
        clock_offset_s: clock.offset.as_seconds_f64(),
        profiles,
    })
}

/// Whether `camera`'s event service lists a motion topic (any topic named `*Motion*`, such as
/// `tns1:RuleEngine/CellMotionDetector/Motion` or `tns1:VideoSource/MotionAlarm`) in
/// GetEventProperties.
pub async fn offers_motion(camera: &str, config: &OnvifConfig, password: Option<Secret>) -> Result<bool, MediaError> {
    let device = Device::new(camera.to_owned(), config, password).map_err(MediaError)?;
    let clock = device.clock().await.map_err(MediaError)?;
    let events_url = device.service(Service::Events, &clock).await.map_err(MediaError)?;
    let op = Operation::GetEventProperties;
    let reply = device
        .call(op, &events_url, &clock, "<tev:GetEventProperties/>")
        .await
        .map_err(MediaError)?;
    let topics = reply
        .payload
        .child(ns::WSTOP, "TopicSet")
        .ok_or_else(|| MediaError(OnvifError::missing(op, "wstop:TopicSet")))?;
    Ok(topics.children.iter().any(names_motion))
}

/// Whether a topic element or one below it is a motion topic.
fn names_motion(topic: &Element) -> bool {
    topic.name.contains("Motion") || topic.children.iter().any(names_motion)
}

/// The main stream (the H.264/H.265 profile with the most pixels) and, when there is more than
/// one profile, the detect stream: the smallest H.264/H.265 profile at least 320 px wide, other
/// than the main one.
pub fn choose_streams(profiles: &[StreamProfile]) -> Option<(&StreamProfile, Option<&StreamProfile>)> {
    const MIN_DETECT_WIDTH: u32 = 320;
    let usable = || profiles.iter().filter(|p| p.is_h26x());
    let main = usable().max_by_key(|p| p.pixels())?;
    let detect = usable()
        .filter(|p| p.width >= MIN_DETECT_WIDTH && p.pixels() < main.pixels() && p.uri != main.uri)
        .min_by_key(|p| p.pixels());
    Some((main, detect))
}

/// `uri` with `username` and `password` in it (percent-encoded), replacing any the camera put
/// there; None when it is not a URL that can hold them.
pub fn with_credentials(uri: &str, username: &str, password: &Secret) -> Option<String> {
    let mut url = url::Url::parse(uri).ok()?;
    url.set_username(username).ok()?;
    let password = Some(password.expose()).filter(|p| !p.is_empty());
    url.set_password(password).ok()?;
    Some(url.to_string())
}

async fn get_profiles(device: &Device, media_url: &str, clock: &CameraClock) -> Result<Vec<StreamProfile>, OnvifError> {
    let op = Operation::GetProfiles;
    let reply = device.call(op, media_url, clock, "<trt:GetProfiles/>").await?;
    parse_profiles(&reply.payload)
}

async fn get_stream_uri(
    device: &Device,
    media_url: &str,
    clock: &CameraClock,
    token: &str,
) -> Result<String, OnvifError> {
    let op = Operation::GetStreamUri;
    let body = format!(
        "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream><tt:Transport>\
         <tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup><trt:ProfileToken>{}</trt:ProfileToken>\
         </trt:GetStreamUri>",
        quick_xml::escape::escape(token)
    );
    let reply = device.call(op, media_url, clock, &body).await?;
    let uri = parse_stream_uri(&reply.payload)?;
    device.hosts.check(op, "the stream URI (tt:Uri)", &uri)?;
    Ok(uri)
}

/// The video profiles of a GetProfilesResponse (those with a video encoder configuration that
/// reads), at most [`MAX_PROFILES`]; their URIs are still to be asked for.
fn parse_profiles(payload: &Element) -> Result<Vec<StreamProfile>, OnvifError> {
    let op = Operation::GetProfiles;
    if !payload.is(ns::TRT, "GetProfilesResponse") {
        return Err(OnvifError::missing(op, "trt:GetProfilesResponse"));
    }
    let profiles: Vec<StreamProfile> = payload
        .children_named(ns::TRT, "Profiles")
        .filter_map(parse_profile)
        .take(MAX_PROFILES)
        .collect();
    if profiles.is_empty() {
        return Err(OnvifError::missing(
            op,
            "trt:Profiles with a tt:VideoEncoderConfiguration (encoding and resolution)",
        ));
    }
    Ok(profiles)
}

fn parse_profile(profile: &Element) -> Option<StreamProfile> {
    let token = profile.attr("token").filter(|t| !t.is_empty())?.to_owned();
    let encoder = profile.child(ns::TT, "VideoEncoderConfiguration")?;
    let number = |steps: &[(&str, &str)]| encoder.path(steps).and_then(|e| e.text().parse::<u32>().ok());
    let width = number(&[(ns::TT, "Resolution"), (ns::TT, "Width")]).filter(|w| *w > 0)?;
    let height = number(&[(ns::TT, "Resolution"), (ns::TT, "Height")]).filter(|h| *h > 0)?;
    let encoding = encoder.child(ns::TT, "Encoding")?.text().to_owned();
    let fps = encoder
        .path(&[(ns::TT, "RateControl"), (ns::TT, "FrameRateLimit")])
        .and_then(|e| e.text().parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f > 0.0);
    Some(StreamProfile {
        name: profile
            .child(ns::TT, "Name")
            .map_or_else(|| token.clone(), |n| n.text().to_owned()),
        token,
        encoding,
        width,
        height,
        fps,
        bitrate_kbps: number(&[(ns::TT, "RateControl"), (ns::TT, "BitrateLimit")]),
        gov_length: number(&[(ns::TT, "H264"), (ns::TT, "GovLength")]),
        uri: String::new(),
    })
}

fn parse_stream_uri(payload: &Element) -> Result<String, OnvifError> {
    let op = Operation::GetStreamUri;
    let uri = payload
        .path(&[(ns::TRT, "MediaUri"), (ns::TT, "Uri")])
        .ok_or_else(|| OnvifError::missing(op, "trt:MediaUri/tt:Uri"))?
        .text();
    let rtsp = uri.len() <= MAX_URI_CHARS
        && url::Url::parse(uri)
            .is_ok_and(|u| matches!(u.scheme(), "rtsp" | "rtsps") && u.host_str().is_some_and(|h| !h.is_empty()));
    if !rtsp {
        return Err(OnvifError::missing(
            op,
            format!("rtsp:// URL in tt:Uri (got {:?})", excerpt(uri)),
        ));
    }
    Ok(uri.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::messages::tests::body_of;
    use super::*;

    /// A GetProfilesResponse as ONVIF Media (ver10) gives it, abridged: a main and a sub profile,
    /// and a profile without video.
    const PROFILES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:trt="http://www.onvif.org/ver10/media/wsdl">
<SOAP-ENV:Body><trt:GetProfilesResponse>
<trt:Profiles token="Profile_1" fixed="true"><tt:Name>mainStream</tt:Name>
<tt:VideoEncoderConfiguration token="VideoEncoderToken_1"><tt:Name>VideoEncoder_1</tt:Name><tt:UseCount>1</tt:UseCount>
<tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>1920</tt:Width><tt:Height>1080</tt:Height></tt:Resolution>
<tt:Quality>5</tt:Quality><tt:RateControl><tt:FrameRateLimit>25</tt:FrameRateLimit><tt:EncodingInterval>1</tt:EncodingInterval>
<tt:BitrateLimit>4096</tt:BitrateLimit></tt:RateControl><tt:H264><tt:GovLength>50</tt:GovLength><tt:H264Profile>Main</tt:H264Profile></tt:H264>
</tt:VideoEncoderConfiguration></trt:Profiles>
<trt:Profiles token="Profile_2" fixed="true"><tt:Name>subStream</tt:Name>
<tt:VideoEncoderConfiguration token="VideoEncoderToken_2"><tt:Encoding>H264</tt:Encoding>
<tt:Resolution><tt:Width>640</tt:Width><tt:Height>360</tt:Height></tt:Resolution></tt:VideoEncoderConfiguration></trt:Profiles>
<trt:Profiles token="Profile_3"><tt:Name>audio</tt:Name></trt:Profiles>
<trt:Profiles token="Profile_4"><tt:Name>broken</tt:Name><tt:VideoEncoderConfiguration token="x"><tt:Encoding>H264</tt:Encoding>
<tt:Resolution><tt:Width>-1</tt:Width><tt:Height>abc</tt:Height></tt:Resolution></tt:VideoEncoderConfiguration></trt:Profiles>
</trt:GetProfilesResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;

    fn profile(token: &str, encoding: &str, width: u32, height: u32) -> StreamProfile {
        StreamProfile {
            token: token.into(),
            name: token.into(),
            encoding: encoding.into(),
            width,
            height,
            fps: None,
            bitrate_kbps: None,
            gov_length: None,
            uri: format!("rtsp://cam/{token}"),
        }
    }

    #[test]
    fn profiles_are_read_and_those_without_video_left_out() {
        let profiles = parse_profiles(&body_of(PROFILES)).expect("profiles");
        assert_eq!(profiles.len(), 2, "{profiles:?}");
        let main = &profiles[0];
        assert_eq!(
            (main.token.as_str(), main.name.as_str(), main.width, main.height),
            ("Profile_1", "mainStream", 1920, 1080)
        );
        assert_eq!(
            (main.fps, main.bitrate_kbps, main.gov_length),
            (Some(25.0), Some(4096), Some(50))
        );
        assert_eq!(profiles[1].describe(), "onvif profile \"subStream\" 640x360 H264");
        let empty = PROFILES
            .split("<trt:Profiles")
            .next()
            .map(|head| format!("{head}</trt:GetProfilesResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"))
            .unwrap_or_default();
        let error = parse_profiles(&body_of(&empty))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("GetProfiles: the camera's reply has no trt:Profiles"),
            "{error}"
        );
    }

    #[test]
    fn the_stream_uri_must_be_rtsp() {
        let reply = |uri: &str| {
            format!(
                r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:trt="http://www.onvif.org/ver10/media/wsdl"><s:Body><trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>{uri}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetStreamUriResponse></s:Body></s:Envelope>"#
            )
        };
        assert_eq!(
            parse_stream_uri(&body_of(&reply(
                "rtsp://10.0.0.5:554/Streaming/Channels/101?transportmode=unicast&amp;profile=Profile_1"
            )))
            .ok()
            .as_deref(),
            Some("rtsp://10.0.0.5:554/Streaming/Channels/101?transportmode=unicast&profile=Profile_1")
        );
        for bad in [
            "http://10.0.0.5/x",
            "rtsp://",
            "file:///etc/passwd",
            "",
            &format!("rtsp://h/{}", "a".repeat(3000)),
        ] {
            assert!(parse_stream_uri(&body_of(&reply(bad))).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_largest_profile_is_main_and_the_smallest_wide_enough_is_detect() {
        let profiles = [
            profile("sub", "H264", 640, 360),
            profile("main", "H265", 2560, 1440),
            profile("tiny", "H264", 176, 144),
            profile("mjpeg", "JPEG", 3840, 2160),
            profile("mid", "H264", 1280, 720),
        ];
        let (main, detect) = choose_streams(&profiles).expect("streams");
        assert_eq!(main.token, "main");
        assert_eq!(detect.map(|d| d.token.as_str()), Some("sub"));
        let (main, detect) = choose_streams(&profiles[1..2]).expect("one profile");
        assert_eq!((main.token.as_str(), detect), ("main", None));
        assert!(choose_streams(&profiles[3..4]).is_none(), "no H.264/H.265 profile");
    }

    #[test]
    fn credentials_go_into_the_uri_encoded() {
        let password = Secret::new("p@ss:w/rd");
        assert_eq!(
            with_credentials("rtsp://10.0.0.5:554/s?a=1", "admin", &password).as_deref(),
            Some("rtsp://admin:p%40ss%3Aw%2Frd@10.0.0.5:554/s?a=1")
        );
        assert_eq!(
            with_credentials("rtsp://cam:x@10.0.0.5/s", "", &Secret::default()).as_deref(),
            Some("rtsp://10.0.0.5/s")
        );
    }
}
