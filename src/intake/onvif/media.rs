//! A camera's streams from its ONVIF media service (Media, ver10): the media service's address
//! (GetCapabilities or GetServices), the profiles (GetProfiles) and each video profile's RTSP URI
//! (GetStreamUri, RTP-Unicast over RTSP), with the same WS-Security credentials as the events;
//! for cameras without Media ver10, the same through Media2 (ver20, `RtspUnicast`);
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
    let version = media_version(&device, &clock).await.map_err(MediaError)?;
    let mut profiles = get_profiles(&device, &version, &clock).await.map_err(MediaError)?;
    for profile in &mut profiles {
        profile.uri = get_stream_uri(&device, &version, &clock, &profile.token)
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

/// The media service the camera offers, at its address.
enum MediaVersion {
    Ver10(String),
    Ver20(String),
}

/// Media ver10 where the camera has it, else Media2 (ver20).
async fn media_version(device: &Device, clock: &CameraClock) -> Result<MediaVersion, OnvifError> {
    match device.service(Service::Media, clock).await {
        Ok(url) => Ok(MediaVersion::Ver10(url)),
        Err(first @ OnvifError::NoService { .. }) => match device.service(Service::Media2, clock).await {
            Ok(url) => Ok(MediaVersion::Ver20(url)),
            Err(e) if e.is_final() => Err(e),
            Err(second) => Err(OnvifError::NoService {
                service: "media or media2",
                detail: format!("{first}; {second}"),
            }),
        },
        Err(e) => Err(e),
    }
}

async fn get_profiles(
    device: &Device,
    version: &MediaVersion,
    clock: &CameraClock,
) -> Result<Vec<StreamProfile>, OnvifError> {
    match version {
        MediaVersion::Ver10(url) => {
            let reply = device
                .call(Operation::GetProfiles, url, clock, "<trt:GetProfiles/>")
                .await?;
            parse_profiles(&reply.payload)
        }
        MediaVersion::Ver20(url) => {
            let body = "<tr2:GetProfiles><tr2:Type>VideoEncoder</tr2:Type></tr2:GetProfiles>";
            let reply = device.call(Operation::GetProfiles2, url, clock, body).await?;
            parse_profiles2(&reply.payload)
        }
    }
}

async fn get_stream_uri(
    device: &Device,
    version: &MediaVersion,
    clock: &CameraClock,
    token: &str,
) -> Result<String, OnvifError> {
    let token = quick_xml::escape::escape(token);
    let (op, url, body) = match version {
        MediaVersion::Ver10(url) => (
            Operation::GetStreamUri,
            url,
            format!(
                "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream><tt:Transport>\
                 <tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup><trt:ProfileToken>{token}</trt:ProfileToken>\
                 </trt:GetStreamUri>"
            ),
        ),
        MediaVersion::Ver20(url) => (
            Operation::GetStreamUri2,
            url,
            format!(
                "<tr2:GetStreamUri><tr2:Protocol>RtspUnicast</tr2:Protocol><tr2:ProfileToken>{token}</tr2:ProfileToken>\
                 </tr2:GetStreamUri>"
            ),
        ),
    };
    let reply = device.call(op, url, clock, &body).await?;
    let uri = parse_stream_uri(op, &reply.payload)?;
    device.hosts.check(op, "the stream URI", &uri)?;
    Ok(uri)
}

/// The video profiles of a Media GetProfilesResponse (those with a video encoder configuration
/// that reads), at most [`MAX_PROFILES`]; their URIs are still to be asked for.
fn parse_profiles(payload: &Element) -> Result<Vec<StreamProfile>, OnvifError> {
    let read = |profile: &Element| {
        let encoder = profile.child(ns::TT, "VideoEncoderConfiguration")?;
        let gov = encoder
            .path(&[(ns::TT, "H264"), (ns::TT, "GovLength")])
            .map(Element::text);
        parse_profile(profile, encoder, profile.child(ns::TT, "Name"), gov)
    };
    collect_profiles(Operation::GetProfiles, payload, ns::TRT, "trt", read)
}

/// A Media2 GetProfilesResponse: `tr2:Profiles` with `tr2:Configurations/tr2:VideoEncoder`.
fn parse_profiles2(payload: &Element) -> Result<Vec<StreamProfile>, OnvifError> {
    let read = |profile: &Element| {
        let encoder = profile.path(&[(ns::TR2, "Configurations"), (ns::TR2, "VideoEncoder")])?;
        parse_profile(
            profile,
            encoder,
            profile.child(ns::TR2, "Name"),
            encoder.attr("GovLength"),
        )
    };
    collect_profiles(Operation::GetProfiles2, payload, ns::TR2, "tr2", read)
}

/// The profiles of a GetProfilesResponse of namespace `media` (`prefix` in messages), each read
/// by `read`: at most [`MAX_PROFILES`], and at least one.
fn collect_profiles(
    op: Operation,
    payload: &Element,
    media: &str,
    prefix: &str,
    read: impl Fn(&Element) -> Option<StreamProfile>,
) -> Result<Vec<StreamProfile>, OnvifError> {
    if !payload.is(media, "GetProfilesResponse") {
        return Err(OnvifError::missing(op, format!("{prefix}:GetProfilesResponse")));
    }
    let profiles: Vec<StreamProfile> = payload
        .children_named(media, "Profiles")
        .filter_map(read)
        .take(MAX_PROFILES)
        .collect();
    if profiles.is_empty() {
        return Err(OnvifError::missing(
            op,
            format!("{prefix}:Profiles with a video encoder configuration (encoding and resolution)"),
        ));
    }
    Ok(profiles)
}

/// A profile from its video encoder configuration, whose `tt` elements both versions share.
fn parse_profile(
    profile: &Element,
    encoder: &Element,
    name: Option<&Element>,
    gov_length: Option<&str>,
) -> Option<StreamProfile> {
    let token = profile.attr("token").filter(|t| !t.is_empty())?.to_owned();
    let number = |steps: &[(&str, &str)]| encoder.path(steps).and_then(|e| e.text().parse::<u32>().ok());
    let width = number(&[(ns::TT, "Resolution"), (ns::TT, "Width")]).filter(|w| *w > 0)?;
    let height = number(&[(ns::TT, "Resolution"), (ns::TT, "Height")]).filter(|h| *h > 0)?;
    let encoding = encoder.child(ns::TT, "Encoding")?.text().to_owned();
    let fps = encoder
        .path(&[(ns::TT, "RateControl"), (ns::TT, "FrameRateLimit")])
        .and_then(|e| e.text().parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f > 0.0);
    Some(StreamProfile {
        name: name.map_or_else(|| token.clone(), |n| n.text().to_owned()),
        token,
        encoding,
        width,
        height,
        fps,
        bitrate_kbps: number(&[(ns::TT, "RateControl"), (ns::TT, "BitrateLimit")]),
        gov_length: gov_length.and_then(|g| g.trim().parse().ok()),
        uri: String::new(),
    })
}

/// The URI of a GetStreamUriResponse: `trt:MediaUri/tt:Uri` (Media), `tr2:Uri` (Media2).
fn parse_stream_uri(op: Operation, payload: &Element) -> Result<String, OnvifError> {
    let (path, what): (&[(&str, &str)], &str) = if op == Operation::GetStreamUri2 {
        (&[(ns::TR2, "Uri")], "tr2:Uri")
    } else {
        (&[(ns::TRT, "MediaUri"), (ns::TT, "Uri")], "trt:MediaUri/tt:Uri")
    };
    let uri = payload.path(path).ok_or_else(|| OnvifError::missing(op, what))?.text();
    let rtsp = uri.len() <= MAX_URI_CHARS
        && url::Url::parse(uri)
            .is_ok_and(|u| matches!(u.scheme(), "rtsp" | "rtsps") && u.host_str().is_some_and(|h| !h.is_empty()));
    if !rtsp {
        return Err(OnvifError::missing(
            op,
            format!("rtsp:// URL in {what} (got {:?})", excerpt(uri)),
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
            parse_stream_uri(
                Operation::GetStreamUri,
                &body_of(&reply(
                    "rtsp://10.0.0.5:554/Streaming/Channels/101?transportmode=unicast&amp;profile=Profile_1"
                ))
            )
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
            assert!(
                parse_stream_uri(Operation::GetStreamUri, &body_of(&reply(bad))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn media2_profiles_and_uris_are_read_too() {
        let profiles = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:tr2="http://www.onvif.org/ver20/media/wsdl"><s:Body>
<tr2:GetProfilesResponse><tr2:Profiles token="Profile_1" fixed="true"><tr2:Name>main</tr2:Name><tr2:Configurations>
<tr2:VideoEncoder token="VE_1" GovLength="50" Profile="Main"><tt:Name>VE_1</tt:Name><tt:UseCount>1</tt:UseCount>
<tt:Encoding>H265</tt:Encoding><tt:Resolution><tt:Width>2560</tt:Width><tt:Height>1440</tt:Height></tt:Resolution>
<tt:RateControl ConstantBitRate="false"><tt:FrameRateLimit>20</tt:FrameRateLimit><tt:BitrateLimit>6144</tt:BitrateLimit></tt:RateControl>
<tt:Quality>5</tt:Quality></tr2:VideoEncoder></tr2:Configurations></tr2:Profiles>
<tr2:Profiles token="Profile_9"><tr2:Name>no video</tr2:Name></tr2:Profiles>
</tr2:GetProfilesResponse></s:Body></s:Envelope>"#;
        let read = parse_profiles2(&body_of(profiles)).expect("profiles");
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(read[0].describe(), "onvif profile \"main\" 2560x1440 H265");
        assert_eq!(
            (read[0].fps, read[0].bitrate_kbps, read[0].gov_length),
            (Some(20.0), Some(6144), Some(50))
        );
        assert!(read[0].is_h26x());
        let uri = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tr2="http://www.onvif.org/ver20/media/wsdl"><s:Body><tr2:GetStreamUriResponse><tr2:Uri>rtsp://10.0.0.5/h265/ch1</tr2:Uri></tr2:GetStreamUriResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_stream_uri(Operation::GetStreamUri2, &body_of(uri))
                .ok()
                .as_deref(),
            Some("rtsp://10.0.0.5/h265/ch1")
        );
        assert!(parse_stream_uri(Operation::GetStreamUri, &body_of(uri)).is_err());
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
